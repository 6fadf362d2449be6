//! One suite for every `Lock`: in-process (the embedded default) and etcd (real server from tests/servers.sh).

use std::sync::Arc;
use std::time::Duration;

use flotilla_coordinator::{EtcdLock, InProcessLock, Lock, LockError};
use flotilla_tests::etcd_url;

async fn in_process() -> Vec<Arc<dyn Lock>> {
    vec![Arc::new(InProcessLock::new())]
}

/// Two separate connections: two coordinators sharing one etcd.
async fn etcd() -> Vec<Arc<dyn Lock>> {
    let url = etcd_url();
    let prefix = flotilla_coordinator::config::DEFAULT_ETCD_PREFIX;
    let a = EtcdLock::connect(std::slice::from_ref(&url), prefix).await.expect("etcd");
    let b = EtcdLock::connect(&[url], prefix).await.expect("etcd");
    vec![Arc::new(a), Arc::new(b)]
}

fn target() -> String {
    format!("db-{}", rand::random::<u64>())
}

macro_rules! on_every_lock {
    ($($test:ident),* $(,)?) => {
        mod in_process { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::in_process().await).await } )* }
        mod etcd { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::etcd().await).await } )* }
    };
}

on_every_lock!(
    exclusive_with_growing_tokens,
    expired_lease_is_taken_over,
    renew_keeps_it,
    one_winner_among_many,
    a_batch_takes_the_free_locks_and_renews_them,
    releasing_one_lock_keeps_the_others,
    a_lock_taken_after_every_other_expired_lives_its_ttl,
);

async fn exclusive_with_growing_tokens(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let t = target();
    let first = a.acquire(&t, "coordinator-a", Duration::from_secs(30)).await.expect("acquire").expect("free");
    assert!(b.acquire(&t, "coordinator-b", Duration::from_secs(30)).await.expect("acquire").is_none(), "held");
    let holder = b.holder(&t).await.expect("holder").expect("someone");
    assert_eq!((holder.holder.as_str(), holder.token), ("coordinator-a", first.token));
    a.release(&first).await.expect("release");
    assert!(b.holder(&t).await.expect("holder").is_none());
    let second = b.acquire(&t, "coordinator-b", Duration::from_secs(30)).await.expect("acquire").expect("free again");
    assert!(second.token > first.token, "fencing tokens only grow: {} then {}", first.token, second.token);
    // Releasing a lease that is no longer ours leaves the new holder alone.
    a.release(&first).await.expect("stale release is a no-op");
    assert_eq!(b.holder(&t).await.expect("holder").map(|h| h.token), Some(second.token));
    b.release(&second).await.expect("release");
}

async fn expired_lease_is_taken_over(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let t = target();
    let dead = a.acquire(&t, "crashed", Duration::from_secs(2)).await.expect("acquire").expect("free");
    // The holder dies: nobody renews. etcd rounds short TTLs up a little, so wait well past it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let next =
        b.acquire(&t, "successor", Duration::from_secs(30)).await.expect("acquire").expect("expired lease is free");
    assert!(next.token > dead.token);
    assert!(matches!(a.renew(&dead).await, Err(LockError::Lost { .. })), "the old holder learns it lost the lock");
    b.release(&next).await.expect("release");
}

async fn renew_keeps_it(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let t = target();
    let lease = a.acquire(&t, "busy", Duration::from_secs(2)).await.expect("acquire").expect("free");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.renew(&lease).await.expect("renewed while alive");
    }
    assert!(
        b.acquire(&t, "other", Duration::from_secs(2)).await.expect("acquire").is_none(),
        "renewed past its first TTL"
    );
    a.release(&lease).await.expect("release");
}

async fn one_winner_among_many(locks: Vec<Arc<dyn Lock>>) {
    let t = target();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let lock = locks[i % locks.len()].clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move { lock.acquire(&t, &format!("c{i}"), Duration::from_secs(30)).await }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.expect("join").expect("acquire") {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 16 concurrent acquirers holds the lock: {winners:?}");
    locks[0].release(&winners[0]).await.expect("release");
}

async fn a_batch_takes_the_free_locks_and_renews_them(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let ttl = Duration::from_secs(30);
    let taken = b.acquire(&target(), "other", ttl).await.expect("acquire").expect("free");
    let held = b.acquire(&target(), "other", ttl).await.expect("acquire").expect("free");
    // More than one etcd transaction's worth, with a lock held elsewhere in the middle.
    let mut targets: Vec<String> = (0..150).map(|_| target()).collect();
    targets.insert(70, held.target.clone());
    let leases = a.acquire_many(&targets, "batch", ttl).await.expect("acquire many");
    assert_eq!(leases.len(), targets.len());
    for (i, (t, lease)) in targets.iter().zip(&leases).enumerate() {
        if i == 70 {
            assert!(lease.is_none(), "a lock held elsewhere is not taken");
            continue;
        }
        let lease = lease.as_ref().expect("a free lock is taken");
        assert_eq!(&lease.target, t);
        let holder = b.holder(t).await.expect("holder").expect("held");
        assert_eq!((holder.holder.as_str(), holder.token), ("batch", lease.token));
    }
    let mut ours: Vec<_> = leases.into_iter().flatten().collect();
    // One of them is taken from us meanwhile (as if it had expired and another holder took it).
    a.release(&ours[3]).await.expect("release");
    let thief = b.acquire(&ours[3].target, "thief", ttl).await.expect("acquire").expect("free");
    let renewed = a.renew_many(&ours).await;
    for (i, r) in renewed.iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(LockError::Lost { .. })), "the lock taken over is lost: {r:?}");
        } else {
            assert!(r.is_ok(), "lock {i} renewed: {r:?}");
        }
    }
    ours.remove(3);
    for lease in &ours {
        a.release(lease).await.expect("release");
        assert!(b.holder(&lease.target).await.expect("holder").is_none());
    }
    for lease in [taken, held, thief] {
        b.release(&lease).await.expect("release");
    }
}

async fn releasing_one_lock_keeps_the_others(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let ttl = Duration::from_secs(2);
    let first = a.acquire(&target(), "busy", ttl).await.expect("acquire").expect("free");
    let second = a.acquire(&target(), "busy", ttl).await.expect("acquire").expect("free");
    a.release(&first).await.expect("release");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.renew(&second).await.expect("the other lock is renewed");
    }
    assert!(b.acquire(&second.target, "other", ttl).await.expect("acquire").is_none(), "still held");
    a.release(&second).await.expect("release");
}

async fn a_lock_taken_after_every_other_expired_lives_its_ttl(locks: Vec<Arc<dyn Lock>>) {
    let (a, b) = (&locks[0], locks.last().expect("a lock"));
    let ttl = Duration::from_secs(2);
    let old = a.acquire(&target(), "busy", ttl).await.expect("acquire").expect("free");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(a.renew(&old).await, Err(LockError::Lost { .. })), "expired unrenewed");
    let new = a.acquire(&target(), "busy", ttl).await.expect("acquire").expect("free");
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.renew(&new).await.expect("a new lock is alive and renewable");
    assert!(b.acquire(&new.target, "other", ttl).await.expect("acquire").is_none(), "held");
    a.release(&new).await.expect("release");
}
