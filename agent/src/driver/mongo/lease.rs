//! The migration lock on MongoDB: a lease document in `flotilla_lock` that a background task renews and that a
//! runner's transactions extend (the fence). A lease left by a dead runner expires by the server's clock.
//!
//! A runner killed mid-transaction leaves that transaction open on the server until `transactionLifetimeLimitSeconds`
//! (60 s by default), holding the lease document and everything the migration touched. So each runner writes into the
//! lease the id of the one session its transactions use, and the runner that takes an expired lease over ends that
//! session (`killSessions`): the abandoned transaction aborts at once, as a PostgreSQL backend's does when its client
//! dies, and the next migration does not wait a minute behind it.
//!
//! A live runner's transaction longer than the lease must not be ended that way: while it holds the lease document
//! (the fence), the renewal of the lease waits behind it, and the lease looks expired. So the keepalive also writes a
//! heartbeat to a document no transaction touches (`alive`), and a session is ended only when its runner's heartbeat
//! has expired too; otherwise the taker waits for the transaction, which extends the lease when it commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use mongodb::{Collection, Database};
use tokio_util::sync::CancellationToken;

use super::{code_of, mongo_error, DUPLICATE_KEY};
use crate::driver::DriverError;

pub(super) const LOCK_ID: &str = "migrate";
/// The heartbeat of the lease's holder: `{owner, expires_at}`, renewed with the lease, never in a transaction.
const ALIVE_ID: &str = "alive";
/// Server error code for an operation that ran out of its `maxTimeMS`.
const MAX_TIME_EXPIRED: i32 = 50;
/// How long one attempt to take the lease may wait inside the server, behind another runner's open transaction,
/// before the lease is read to see whether that runner is gone.
const ATTEMPT: Duration = Duration::from_millis(500);

/// A lease this runner holds, renewed in the background until [`HeldLease::stop`].
pub(super) struct HeldLease {
    pub owner: String,
    lost: Arc<AtomicBool>,
    keepalive: CancellationToken,
}

impl HeldLease {
    /// Whether a renewal found the lease taken or gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.keepalive.cancel();
    }
}

/// An update pipeline that sets the expiry `ttl_ms` after the server's now; when taking the lease, also its owner and
/// the session its transactions use (the heartbeat names only the owner).
pub(super) fn extend_lease(taker: Option<(&str, Option<&Document>)>, ttl_ms: i64) -> Vec<Document> {
    let mut set = doc! { "expires_at": { "$add": ["$$NOW", ttl_ms] } };
    if let Some((owner, session)) = taker {
        set.insert("owner", doc! { "$literal": owner });
        if let Some(session) = session {
            set.insert("session", doc! { "$literal": session.clone() });
        }
    }
    vec![doc! { "$set": set }]
}

/// A lease nobody holds: expired since the start of time, so any runner takes it.
pub(super) fn released() -> Document {
    doc! { "_id": LOCK_ID, "owner": Bson::Null, "expires_at": bson::DateTime::MIN }
}

pub(super) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Takes the lease for `owner`, whose transactions run in `session`, waiting up to `timeout` for another runner's.
pub(super) async fn take(
    locks: &Collection<Document>,
    admin: &Database,
    owner: &str,
    session: &Document,
    ttl: Duration,
    timeout: Duration,
) -> Result<HeldLease, DriverError> {
    let ttl_ms = ttl_ms(ttl);
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    // Expiry is judged by the server's clock ($$NOW), never a client's: a runner whose clock is ahead must not see a
    // live lease as expired.
    let expired = doc! { "$expr": { "$lt": ["$expires_at", "$$NOW"] } };
    // Ending another runner's session is tried until it is refused once (another user's session needs a privilege).
    let mut may_end = true;
    loop {
        let taken = locks
            .find_one_and_update(
                doc! { "_id": LOCK_ID, "$or": [expired.clone(), { "owner": owner }] },
                extend_lease(Some((owner, Some(session))), ttl_ms),
            )
            .max_time(ATTEMPT)
            .await;
        match taken {
            Ok(Some(before)) => {
                if may_end {
                    end_abandoned(locks, admin, &before, owner, ttl).await;
                }
                break;
            }
            // None yet (a database's first run), or held by a live runner. (An upsert may not filter with $expr: the
            // document is created, released, when missing.)
            Ok(None) => match locks.insert_one(released()).await {
                Ok(_) => continue,
                Err(e) if code_of(&e) == Some(DUPLICATE_KEY) => {}
                Err(e) => return Err(mongo_error(e)),
            },
            // An open transaction holds the lease document; if the lease has expired, that transaction's runner is
            // gone (a live one renews it).
            Err(e) if code_of(&e) == Some(MAX_TIME_EXPIRED) => {
                let lapsed = doc! { "_id": LOCK_ID, "$expr": { "$lt": ["$expires_at", "$$NOW"] } };
                if let Some(before) = locks.find_one(lapsed).await.map_err(mongo_error)?.filter(|_| may_end) {
                    may_end = end_abandoned(locks, admin, &before, owner, ttl).await;
                }
            }
            Err(e) => return Err(mongo_error(e)),
        }
        if started.elapsed() >= timeout {
            let holder = locks.find_one(doc! { "_id": LOCK_ID }).await.ok().flatten();
            let holder = holder.and_then(|d| d.get_str("owner").ok().map(str::to_string));
            return Err(DriverError::LockTimeout { waited: timeout, holder });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    Ok(keep_alive(locks.clone(), owner, ttl))
}

/// Renews the heartbeat and the lease every third of its TTL until stopped; a renewal that finds the lease gone marks
/// it lost. A renewal that waits behind this runner's own transaction (the fence holds the lease document) is not a
/// loss: the transaction extends the lease when it commits.
fn keep_alive(locks: Collection<Document>, owner: &str, ttl: Duration) -> HeldLease {
    let lease = HeldLease {
        owner: owner.to_string(),
        lost: Arc::new(AtomicBool::new(false)),
        keepalive: CancellationToken::new(),
    };
    let (owner, lost, token) = (lease.owner.clone(), lease.lost.clone(), lease.keepalive.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(ttl / 3) => {}
            }
            let beat = locks.update_one(doc! { "_id": ALIVE_ID }, extend_lease(Some((&owner, None)), ttl_ms(ttl)));
            if let Err(e) = beat.upsert(true).await {
                tracing::warn!(owner = %owner, error = %e, "MongoDB migration heartbeat could not be written");
            }
            let renewed = locks
                .find_one_and_update(doc! { "_id": LOCK_ID, "owner": &owner }, extend_lease(None, ttl_ms(ttl)))
                .max_time(ttl / 3)
                .await;
            let waited_behind_own_transaction = matches!(&renewed, Err(e) if code_of(e) == Some(MAX_TIME_EXPIRED));
            if !matches!(renewed, Ok(Some(_))) && !waited_behind_own_transaction {
                tracing::warn!(owner = %owner, "MongoDB migration lease could not be renewed");
                lost.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    lease
}

/// Ends the session named in `lease`, an expired lease of another runner whose heartbeat has expired too: a
/// transaction that runner left open would otherwise hold the lease document and what its migration touched until the
/// server's transaction time limit. A runner whose heartbeat is fresh is alive, in a long transaction: left alone.
/// `false` when the server refused to end the session: trying again would only be refused again.
async fn end_abandoned(
    locks: &Collection<Document>,
    admin: &Database,
    lease: &Document,
    owner: &str,
    ttl: Duration,
) -> bool {
    let (Ok(previous), Ok(session)) = (lease.get_str("owner"), lease.get_document("session")) else { return true };
    if previous == owner {
        return true;
    }
    let beating = doc! { "_id": ALIVE_ID, "owner": previous, "$expr": { "$gt": ["$expires_at", "$$NOW"] } };
    match locks.find_one(beating).max_time(ttl).await {
        Ok(None) => {}
        Ok(Some(_)) => return true,
        Err(e) => {
            tracing::warn!(previous, error = %e, "could not read the heartbeat of the runner whose lease expired");
            return true;
        }
    }
    match admin.run_command(doc! { "killSessions": [session.clone()] }).await {
        Ok(_) => {
            tracing::info!(previous, "ended the session of the runner whose lease expired");
            true
        }
        // Another database user's session needs the killAnySession privilege: without it, an abandoned transaction
        // ends only by the server's transaction time limit.
        Err(e) => {
            tracing::warn!(
                previous,
                error = %e,
                "could not end the session of the runner whose lease expired; its open transaction, if any, ends by \
                 the server's transaction time limit"
            );
            false
        }
    }
}
