//! Warm connections: one idle connection per target, kept for a while after a step or a check, so the next one
//! (a check of a re-run, the assignment after a check, the periodic history read) skips the connect. At most
//! `max_idle` are kept (a database server has a connection limit of its own), each for at most `idle_for`.
//!
//! A connection on which migrations ran comes back only if its engine can reset the session
//! ([`Driver::reset_session`]); one whose step failed is closed. A kept connection may have died meanwhile (the
//! server restarted): callers that take one try again once on a new connection when its first use fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::driver::{connect, ConnectOptions, Driver, DriverError};
use crate::executor::{ExecError, Executor};

pub(super) struct Connections {
    idle: Mutex<HashMap<String, Idle>>,
    max_idle: usize,
    idle_for: Duration,
}

struct Idle {
    driver: Box<dyn Driver>,
    since: Instant,
    /// Opened with `ConnectOptions::create`. One opened without may not be the target's database at all (SQLite
    /// reads a missing file as an empty database in memory): it serves reads only.
    create: bool,
}

/// A connection taken for a target: `reused` if it was kept from an earlier use.
pub(super) struct Taken {
    pub driver: Box<dyn Driver>,
    pub reused: bool,
}

impl Connections {
    pub fn new(max_idle: usize, idle_for: Duration) -> Self {
        Connections { idle: Mutex::default(), max_idle, idle_for }
    }

    /// The target's kept connection if there is a fresh one, else a new one.
    pub async fn take(&self, target: &Target, options: &ConnectOptions) -> Result<Taken, DriverError> {
        let kept = locked(&self.idle).remove(&target.name);
        match kept {
            Some(idle) if idle.since.elapsed() < self.idle_for && (idle.create || !options.create) => {
                return Ok(Taken { driver: idle.driver, reused: true })
            }
            Some(old) => old.driver.close().await,
            None => {}
        }
        Ok(Taken { driver: connect(&target.url, options).await?, reused: false })
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

    /// Keeps a connection that only read, or whose session `reset` made as new; closes it otherwise, or when
    /// `max_idle` are kept already.
    pub async fn put(&self, target: &str, mut driver: Box<dyn Driver>, options: &ConnectOptions, ran_migrations: bool) {
        if ran_migrations && !driver.reset_session().await.unwrap_or(false) {
            driver.close().await;
            return;
        }
        let refused = {
            let mut idle = locked(&self.idle);
            if idle.len() >= self.max_idle && !idle.contains_key(target) {
                Some(driver)
            } else {
                let entry = Idle { driver, since: Instant::now(), create: options.create };
                idle.insert(target.to_string(), entry).map(|old| old.driver)
            }
        };
        if let Some(extra) = refused {
            extra.close().await;
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
