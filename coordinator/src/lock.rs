//! One lock per target database, with fencing tokens: see docs/design/fleet.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub target: String,
    pub holder: String,
    /// Strictly greater than every token issued before for this target.
    pub token: u64,
    /// Implementation detail: the etcd lease id (0 in process).
    pub id: i64,
}

/// Who holds a target's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub holder: String,
    pub token: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    #[error("the lock on {target} was lost (it expired or another holder took it)")]
    Lost { target: String },
    #[error("lock service: {0}")]
    Service(String),
}

#[async_trait]
pub trait Lock: Send + Sync {
    /// Takes `target`'s lock for `holder` for `ttl`; `None` when someone else holds it.
    async fn acquire(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>, LockError>;
    /// Takes each of `targets`' locks that is free, in the order asked (`None` where someone else holds one), in as
    /// few round trips as the service allows. The targets are distinct.
    async fn acquire_many(
        &self,
        targets: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError> {
        let mut leases = Vec::with_capacity(targets.len());
        for target in targets {
            leases.push(self.acquire(target, holder, ttl).await?);
        }
        Ok(leases)
    }
    /// Extends the lease; `Lost` once it expired or was taken.
    async fn renew(&self, lease: &Lease) -> Result<(), LockError>;
    /// Extends each lease, in the order given, in as few round trips as the service allows.
    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<(), LockError>> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            out.push(self.renew(lease).await);
        }
        out
    }
    /// Gives the lock up if it is still ours.
    async fn release(&self, lease: &Lease) -> Result<(), LockError>;
    async fn holder(&self, target: &str) -> Result<Option<Holder>, LockError>;
}

/// The embedded default: locks inside one coordinator process.
#[derive(Debug, Default)]
pub struct InProcessLock {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<String, Held>,
    /// Last token issued per target; never goes back.
    tokens: HashMap<String, u64>,
    /// Every token issued is above this (a restarted coordinator passes the highest token its store recorded).
    floor: u64,
}

#[derive(Debug)]
struct Held {
    holder: String,
    token: u64,
    ttl: Duration,
    expires: Instant,
}

impl InProcessLock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A lock whose tokens all exceed `floor`, so agents never see a token go back after a coordinator restart.
    pub fn with_token_floor(floor: u64) -> Self {
        let lock = Self::default();
        lock.state().floor = floor;
        lock
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this mutex leaves plain data behind; recover it rather than poison every caller.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Lock for InProcessLock {
    async fn acquire(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let mut state = self.state();
        let now = Instant::now();
        if state.held.get(target).is_some_and(|h| h.expires > now) {
            return Ok(None);
        }
        let token = state.tokens.get(target).copied().unwrap_or(0).max(state.floor) + 1;
        state.tokens.insert(target.to_string(), token);
        state.held.insert(target.to_string(), Held { holder: holder.to_string(), token, ttl, expires: now + ttl });
        Ok(Some(Lease { target: target.to_string(), holder: holder.to_string(), token, id: 0 }))
    }

    async fn renew(&self, lease: &Lease) -> Result<(), LockError> {
        let mut state = self.state();
        let now = Instant::now();
        match state.held.get_mut(&lease.target) {
            Some(h) if h.token == lease.token && h.expires > now => {
                h.expires = now + h.ttl;
                Ok(())
            }
            _ => Err(LockError::Lost { target: lease.target.clone() }),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let mut state = self.state();
        if state.held.get(&lease.target).is_some_and(|h| h.token == lease.token) {
            state.held.remove(&lease.target);
        }
        Ok(())
    }

    async fn holder(&self, target: &str) -> Result<Option<Holder>, LockError> {
        let state = self.state();
        Ok(state
            .held
            .get(target)
            .filter(|h| h.expires > Instant::now())
            .map(|h| Holder { holder: h.holder.clone(), token: h.token }))
    }
}
