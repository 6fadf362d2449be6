//! Agents: who may serve what, registration, heartbeats (and the steps they say are running), assignment streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flotilla_core::fleet::Target;
use tokio::sync::mpsc;
use tracing::info;

use super::*;
use crate::identity::{self, Identity};

/// Heartbeats that must miss an assigned step before it is taken back: one could have been sent before the
/// assignment arrived.
const MISSES_BEFORE_RECLAIM: u32 = 2;
/// A heartbeat this soon after an assignment was sent does not count as missing it (it may be in transit).
const ASSIGNMENT_TRANSIT: Duration = Duration::from_secs(1);
/// Messages an agent's stream holds before a send is refused (the work goes back to the plan for a later pass).
const STREAM_DEPTH: usize = 1024;

impl Coordinator {
    /// The globs an agent may serve: from its certificate and the coordinator's config.
    pub(super) fn allowed(&self, who: &Identity, name: &str) -> Option<Vec<String>> {
        match who {
            Identity::Insecure => Some(vec!["*".to_string()]),
            Identity::Agent { name: n, targets } if n == name && !self.denied(who) => {
                let mut globs = targets.clone();
                globs.extend(self.access().agent_targets.get(name).cloned().unwrap_or_default());
                Some(globs)
            }
            _ => None,
        }
    }

    /// Registers an agent's targets. Every target must be allowed, or nothing is registered.
    pub async fn register(&self, who: &Identity, name: &str, targets: Vec<Target>) -> Result<()> {
        let Some(globs) = self.allowed(who, name) else {
            let why = if self.denied(who) { " (it is on the coordinator's deny-list)" } else { "" };
            return self.refuse(who, None, format!("{} may not register as agent `{name}`{why}", who.actor())).await;
        };
        let refused: Vec<&str> =
            targets.iter().filter(|t| !identity::allows(&globs, &t.name)).map(|t| t.name.as_str()).collect();
        if !refused.is_empty() {
            return Err(ServiceError::NotAllowed(format!(
                "agent `{name}` may not serve target(s) {}: its certificate and the coordinator's config allow only {}",
                refused.join(", "),
                if globs.is_empty() { "none".to_string() } else { globs.join(", ") }
            )));
        }
        let mut names = std::collections::HashSet::with_capacity(targets.len());
        if let Some(twice) = targets.iter().find(|t| !names.insert(&t.name)) {
            return Err(ServiceError::BadInput(format!(
                "target `{}` is listed twice in agent `{name}`'s registration",
                twice.name
            )));
        }
        let known: HashMap<String, String> =
            self.store.targets().await?.into_iter().map(|k| (k.name, k.agent)).collect();
        for t in &targets {
            match known.get(&t.name) {
                Some(other) if other != name && self.is_connected(other) => {
                    return Err(ServiceError::Refused(format!(
                        "target `{}` is served by connected agent `{other}`",
                        t.name
                    )));
                }
                _ => {}
            }
        }
        let mine: Vec<Target> = targets.iter().map(|t| Target { agent: name.to_string(), ..t.clone() }).collect();
        self.store.upsert_targets(&mine).await?;
        let mut inner = self.inner();
        let mut owners = (*inner.owners).clone();
        for t in &targets {
            inner.engines.insert(t.name.clone(), t.engine);
            if let Some(host) = t.labels.get("host") {
                inner.hosts.insert(t.name.clone(), host.clone());
            }
            owners.insert(t.name.clone(), name.to_string());
        }
        inner.owners = Arc::new(owners);
        let entry = inner.agents.entry(name.to_string()).or_insert_with(|| AgentEntry {
            targets: Vec::new(),
            sender: None,
            stream: 0,
            last_seen: None,
            certificate_expiry: None,
            max_idle: 0,
        });
        entry.targets = targets.iter().map(|t| t.name.clone()).collect();
        entry.last_seen = Some((Instant::now(), Utc::now()));
        info!(agent = name, targets = targets.len(), "agent registered");
        Ok(())
    }

    /// Records when the certificate an agent registered with expires, for `flotilla agents` and the metrics.
    pub fn agent_certificate(&self, name: &str, expiry: Option<i64>) {
        if let Some(entry) = self.inner().agents.get_mut(name) {
            entry.certificate_expiry = expiry;
        }
        self.metrics.certificate_expires(&format!("agent:{name}"), expiry);
    }

    /// How many idle database connections the agent keeps warm (it says so when it registers).
    pub fn agent_max_idle(&self, name: &str, max_idle: u32) {
        if let Some(entry) = self.inner().agents.get_mut(name) {
            entry.max_idle = max_idle as usize;
        }
    }

    pub(super) fn check_agent(&self, who: &Identity, name: &str) -> Result<()> {
        self.allowed(who, name)
            .map(drop)
            .ok_or_else(|| ServiceError::NotAllowed(format!("{} may not act as agent `{name}`", who.actor())))
    }

    pub async fn heartbeat(&self, who: &Identity, name: &str, report: TargetReport) -> Result<()> {
        self.check_agent(who, name)?;
        let missing = self.record_heartbeat(name, &report)?;
        for (plan_id, target, token) in missing {
            self.reclaim(
                &plan_id,
                &target,
                token,
                "its agent is not running the step (restarted, or the assignment was lost or refused)",
            )
            .await?;
        }
        Ok(())
    }

    /// Records what the heartbeat says; returns the steps held for this agent's targets that it has now missed
    /// `MISSES_BEFORE_RECLAIM` times.
    pub(super) fn record_heartbeat(&self, name: &str, report: &TargetReport) -> Result<Vec<(String, String, u64)>> {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let Some(entry) = inner.agents.get_mut(name) else {
            return Err(ServiceError::Refused(format!("agent `{name}` has not registered")));
        };
        entry.last_seen = Some((Instant::now(), Utc::now()));
        let owned: Vec<String> = entry.targets.clone();
        let now = Instant::now();
        for target in owned {
            if report.unreachable.contains_key(&target) {
                continue;
            }
            // The agent sends every fingerprint it has, each with the version it goes with: one it no longer sends
            // (its target changed since) is no longer known.
            match report.fingerprints.get(&target) {
                Some(fingerprint) => inner.fingerprints.insert(target.clone(), fingerprint.clone()),
                None => inner.fingerprints.remove(&target),
            };
            if let Some(&applied) = report.applied.get(&target) {
                let dirty = report.dirty.contains(&target);
                inner.live.insert(target, TargetLive { applied: Some(applied), dirty, reported: now });
            }
        }
        for (fingerprint, schema) in &report.schemas {
            inner.schemas.insert(fingerprint.clone(), Arc::new(schema.clone()));
        }
        let mut missing = Vec::new();
        for ((plan_id, target), held) in inner.held.iter_mut() {
            if inner.owners.get(target).map(String::as_str) != Some(name) || held.since.elapsed() < ASSIGNMENT_TRANSIT {
                continue;
            }
            if report.running.contains(&(plan_id.clone(), target.clone(), held.lease.token)) {
                held.misses = 0;
                continue;
            }
            held.misses += 1;
            if held.misses >= MISSES_BEFORE_RECLAIM {
                missing.push((plan_id.clone(), target.clone(), held.lease.token));
            }
        }
        Ok(missing)
    }

    /// Opens an agent's assignment stream; the coordinator pushes work into it. Returns the stream's generation,
    /// for [`Coordinator::disconnect`].
    pub fn connect(&self, who: &Identity, name: &str) -> Result<(mpsc::Receiver<Work>, u64)> {
        self.check_agent(who, name)?;
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let mut inner = self.inner();
        let Some(entry) = inner.agents.get_mut(name) else {
            return Err(ServiceError::Refused(format!("agent `{name}` has not registered")));
        };
        entry.sender = Some(tx);
        entry.stream += 1;
        entry.last_seen = Some((Instant::now(), Utc::now()));
        let stream = entry.stream;
        drop(inner);
        self.wake.notify_one();
        Ok((rx, stream))
    }

    /// The agent's stream ended (it went away or reconnected).
    pub fn disconnect(&self, name: &str, stream: u64) {
        let mut inner = self.inner();
        if let Some(entry) = inner.agents.get_mut(name) {
            if entry.stream == stream {
                entry.sender = None;
                info!(agent = name, "agent disconnected");
            }
        }
    }

    /// Which agent serves each registered target (agents that have not registered since a restart are absent).
    pub(crate) fn owners(&self) -> Arc<HashMap<String, String>> {
        self.inner().owners.clone()
    }

    /// Sets the gauges of agents and targets from what this coordinator knows: agents connected, targets by the
    /// version their agents last reported.
    pub(crate) fn refresh_gauges(&self) {
        let agents: Vec<String> = self.inner().agents.keys().cloned().collect();
        let connected = agents.iter().filter(|a| self.is_connected(a)).count();
        self.metrics.agents_connected.set(i64::try_from(connected).unwrap_or(i64::MAX));
        let mut by_version: HashMap<(String, bool), i64> = HashMap::new();
        for live in self.inner().live.values() {
            let version = live.applied.map_or_else(|| "unknown".to_string(), |v| v.to_string());
            *by_version.entry((version, live.dirty)).or_default() += 1;
        }
        self.metrics.targets.clear();
        for ((version, dirty), n) in by_version {
            let labels = crate::metrics::TargetVersion { version, dirty: dirty.to_string() };
            self.metrics.targets.get_or_create(&labels).set(n);
        }
    }

    /// A target's engine as registered (`unknown` before its agent registered with this coordinator).
    pub(crate) fn engine_of(&self, target: &str) -> String {
        self.inner().engines.get(target).map_or_else(|| "unknown".to_string(), |e| e.as_str().to_string())
    }

    pub(crate) fn is_connected(&self, agent: &str) -> bool {
        let inner = self.inner();
        inner.agents.get(agent).is_some_and(|e| {
            e.sender.as_ref().is_some_and(|s| !s.is_closed())
                && e.last_seen.is_some_and(|(t, _)| t.elapsed() < self.config.heartbeat_timeout)
        })
    }

    pub(crate) fn sender(&self, agent: &str) -> Option<mpsc::Sender<Work>> {
        self.inner().agents.get(agent).and_then(|e| e.sender.clone())
    }

    pub async fn agents(&self, who: &Identity) -> Result<Vec<AgentView>> {
        self.allow(who, crate::identity::Permission::Read, "list agents", None).await?;
        let mut names: Vec<String> = self.inner().agents.keys().cloned().collect();
        for t in self.store.targets().await? {
            if !names.contains(&t.agent) {
                names.push(t.agent);
            }
        }
        names.sort();
        let targets = self.store.targets().await?;
        Ok(names
            .into_iter()
            .map(|name| {
                let (last_seen, expiry) = match self.inner().agents.get(&name) {
                    Some(e) => (e.last_seen.map(|(_, at)| at), e.certificate_expiry),
                    None => (None, None),
                };
                AgentView {
                    certificate_expires: expiry.and_then(|t| DateTime::from_timestamp(t, 0)),
                    targets: targets.iter().filter(|t| t.agent == name).map(|t| t.name.clone()).collect(),
                    connected: self.is_connected(&name),
                    last_seen,
                    name,
                }
            })
            .collect())
    }
}
