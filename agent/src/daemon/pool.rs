//! Warm connections: one idle connection per target, kept for a while after a step or a check, so the next one
//! (a check of a re-run, the assignment after a check, the periodic history read) skips the connect. At most
//! `max_idle` are kept (a database server has a connection limit of its own), each for at most `idle_for`; when
//! full, only a connection a step is about to use pushes another out ([`Kept`]).
//!
//! A connection on which migrations ran comes back only if its engine can reset the session
//! ([`Driver::reset_session`]); one whose step failed is closed. A kept connection may have died meanwhile (the
//! server restarted): callers that take one try again once on a new connection when its first use fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::driver::{connect, ConnectOptions, Driver, DriverError};
use crate::executor::{ExecError, Executor};

pub(super) struct Connections {
    idle: Mutex<HashMap<String, Idle>>,
    max_idle: usize,
    idle_for: Duration,
    /// Connections opened, and kept ones used again (the agent's metrics).
    opened: Counter,
    reused: Counter,
}

struct Idle {
    driver: Box<dyn Driver>,
    since: Instant,
    /// Opened with `ConnectOptions::create`. One opened without may not be the target's database at all (SQLite
    /// reads a missing file as an empty database in memory): it serves reads only.
    create: bool,
    /// What it came back after.
    kept: Kept,
}

/// A connection taken for a target: `reused` if it was kept from an earlier use.
pub(super) struct Taken {
    pub driver: Box<dyn Driver>,
    pub reused: bool,
}

impl Connections {
    pub fn new(max_idle: usize, idle_for: Duration, metrics: &metrics::Metrics) -> Self {
        let (opened, reused) = (metrics.connections_opened.clone(), metrics.connections_reused.clone());
        Connections { idle: Mutex::default(), max_idle, idle_for, opened, reused }
    }

    /// How many idle connections are kept at most.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// The target's kept connection if there is a fresh one, else a new one.
    pub async fn take(&self, target: &Target, options: &ConnectOptions) -> Result<Taken, DriverError> {
        let kept = locked(&self.idle).remove(&target.name);
        match kept {
            Some(idle) if idle.since.elapsed() < self.idle_for && (idle.create || !options.create) => {
                self.reused.inc();
                return Ok(Taken { driver: idle.driver, reused: true });
            }
            Some(old) => old.driver.close().await,
            None => {}
        }
        let driver = connect(&target.url, options).await?;
        self.opened.inc();
        Ok(Taken { driver, reused: false })
    }

    /// An executor on the target's connection (kept or new) and what `first` returned on it. A kept connection
    /// whose first use fails may have died while idle: it is closed and `first` tried once more on a new one.
    pub async fn open<T>(
        &self,
        target: &Target,
        options: &ConnectOptions,
        make: impl Fn(Box<dyn Driver>) -> Executor,
        first: impl for<'e> Fn(&'e mut Executor) -> BoxFuture<'e, Result<T, ExecError>>,
    ) -> Result<(Executor, T), String> {
        let taken = self.take(target, options).await.map_err(|e| e.to_string())?;
        let mut ex = make(taken.driver);
        // Whoever puts the connection back says how it was opened: with `options`.
        match first(&mut ex).await {
            Ok(v) => return Ok((ex, v)),
            Err(e) if !taken.reused => {
                ex.close().await;
                return Err(e.to_string());
            }
            Err(_) => ex.close().await,
        }
        let mut ex = make(connect(&target.url, options).await.map_err(|e| e.to_string())?);
        match first(&mut ex).await {
            Ok(v) => Ok((ex, v)),
            Err(e) => {
                ex.close().await;
                Err(e.to_string())
            }
        }
    }

    /// Keeps a connection (one a step ran migrations on only if its session `reset` made it as new), or closes it.
    /// With `max_idle` kept already, only a connection a step is about to use pushes another out (the longest kept
    /// of those a step is done with, else of those that read): the others are closed.
    pub async fn put(&self, target: &str, mut driver: Box<dyn Driver>, options: &ConnectOptions, kept: Kept) {
        if kept == (Kept::AfterStep { ran_migrations: true }) && !driver.reset_session().await.unwrap_or(false) {
            driver.close().await;
            return;
        }
        let entry = Idle { driver, since: Instant::now(), create: options.create, kept };
        let closed = {
            let mut idle = locked(&self.idle);
            if idle.len() < self.max_idle || idle.contains_key(target) {
                [idle.insert(target.to_string(), entry).map(|old| old.driver), None]
            } else {
                let others = idle.iter().map(|(name, i)| (name.as_str(), i.since, i.kept));
                match giving_way(others, kept).map(str::to_string) {
                    Some(name) => {
                        let evicted = idle.remove(&name).map(|i| i.driver);
                        [evicted, idle.insert(target.to_string(), entry).map(|old| old.driver)]
                    }
                    None => [Some(entry.driver), None],
                }
            }
        };
        for driver in closed.into_iter().flatten() {
            driver.close().await;
        }
    }

    /// Closes connections idle for `idle_for` or longer.
    pub async fn sweep(&self) {
        let expired: Vec<Box<dyn Driver>> = {
            let mut idle = locked(&self.idle);
            let names: Vec<String> =
                idle.iter().filter(|(_, i)| i.since.elapsed() >= self.idle_for).map(|(n, _)| n.clone()).collect();
            names.into_iter().filter_map(|n| idle.remove(&n)).map(|i| i.driver).collect()
        };
        for driver in expired {
            driver.close().await;
        }
    }

    pub async fn close_all(&self) {
        let all: Vec<Box<dyn Driver>> = locked(&self.idle).drain().map(|(_, i)| i.driver).collect();
        for driver in all {
            driver.close().await;
        }
    }
}

/// What a connection comes back to the pool after, which says whether it is about to be used again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kept {
    /// A step: its target is done for the plan.
    AfterStep { ran_migrations: bool },
    /// A read: a history re-read, or a check that found its target at its goal.
    AfterRead,
    /// A check that found its target not at its goal: the coordinator assigns its step next.
    BeforeStep,
}

/// Which kept connection (name, kept since, what after) gives way to a new one in a full pool, if any: only one a
/// step is about to use pushes another out, the longest kept of those a step is done with, else of those that read.
fn giving_way<'a>(others: impl Iterator<Item = (&'a str, Instant, Kept)>, new: Kept) -> Option<&'a str> {
    let rank = |kept: Kept| match kept {
        Kept::AfterStep { .. } => 0,
        Kept::AfterRead => 1,
        Kept::BeforeStep => 2,
    };
    if new != Kept::BeforeStep {
        return None;
    }
    let (name, _, kept) = others.min_by_key(|&(_, since, kept)| (rank(kept), since))?;
    (kept != Kept::BeforeStep).then_some(name)
}

/// Sweeps idle connections every few seconds; closes them all at shutdown.
pub(super) async fn sweep_loop(state: Arc<State>, shutdown: CancellationToken) {
    let every = (state.connections.idle_for / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => state.connections.sweep().await,
        }
    }
    state.connections.close_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_full_pool_only_a_connection_a_step_is_about_to_use_pushes_another_out() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (read, next, done) = (Kept::AfterRead, Kept::BeforeStep, Kept::AfterStep { ran_migrations: true });
        let kept = [("read-old", at(0), read), ("stepped-new", at(20), done), ("stepped-old", at(10), done)];
        assert_eq!(giving_way(kept.into_iter(), next), Some("stepped-old"), "first what a step is done with");
        assert_eq!(giving_way(kept.into_iter(), read), None, "a read's connection never pushes one out");
        assert_eq!(giving_way(kept.into_iter(), done), None, "nor does a step's");
        let reads = [("read-new", at(30), read), ("read-old", at(0), read), ("next", at(0), next)];
        assert_eq!(giving_way(reads.into_iter(), next), Some("read-old"), "else the longest kept of the reads");
        let all_next = [("next-a", at(0), next), ("next-b", at(1), next)];
        assert_eq!(giving_way(all_next.into_iter(), next), None, "one about to be used stays");
        assert_eq!(giving_way(std::iter::empty(), next), None, "max_idle 0 keeps none");
    }
}
