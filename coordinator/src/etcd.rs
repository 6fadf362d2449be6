//! The production [`Lock`]: the key `<prefix><target>` (by default `/flotilla/locks/<target>`), created only if
//! absent, attached to an etcd lease. Fleets that share one etcd keep apart by their prefixes. The fencing token is
//! the key's create revision: etcd revisions only grow.
//!
//! Every lock one coordinator holds (for one TTL) hangs on one shared etcd lease: taking a batch of locks is one
//! transaction, giving one back is one delete, and keeping them all alive is one keep-alive. When that lease
//! expires (this coordinator was cut off from etcd for a TTL), every lock on it is lost at once, as each would have
//! been on its own lease; the next lock taken gets a new lease.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::Mutex;

use crate::lock::{Holder, Lease, Lock, LockError};

/// Keys per etcd transaction: well under etcd's `--max-txn-ops` (128 by default).
const TXN_KEYS: usize = 64;

pub struct EtcdLock {
    client: Client,
    prefix: String,
    /// TTL in seconds → the lease this process's locks with that TTL hang on.
    shared: Mutex<HashMap<i64, Shared>>,
}

struct Shared {
    id: i64,
    /// When etcd last confirmed the lease alive (granted or kept alive).
    refreshed: Instant,
}

fn service(e: etcd_client::Error) -> LockError {
    LockError::Service(e.to_string())
}

/// etcd refused a put on a lease that expired meanwhile.
fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

fn token_of(revision: i64) -> Result<u64, LockError> {
    u64::try_from(revision).map_err(|_| LockError::Service(format!("etcd returned revision {revision}")))
}

/// How the coordinator proves itself to etcd and knows it is talking to etcd: TLS (etcd's CA, and a client
/// certificate for etcd's `--client-cert-auth`) and/or an etcd user. Without either, etcd must be on a network
/// only the coordinators reach.
#[derive(Debug, Clone, Default)]
pub struct EtcdAuth {
    pub tls: Option<EtcdTls>,
    pub user: Option<EtcdUser>,
}

/// etcd's CA, and the client certificate and key the coordinator presents (both or neither).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// An etcd user and its password; the password never shows in `Debug` output (nor in logs).
#[derive(Clone)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser").field("name", &self.name).field("password", &"***").finish()
    }
}

impl EtcdAuth {
    /// etcd-client's options for this: files read now, a key readable by others refused.
    fn options(&self) -> Result<etcd_client::ConnectOptions, LockError> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| LockError::Service(format!("cannot read {}: {e}", path.display())))
            };
            let mut config =
                etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let key = flotilla_proto::process::read_private_key(key).map_err(LockError::Service)?;
                config = config.identity(etcd_client::Identity::from_pem(read(cert)?, key));
            }
            options = options.with_tls(config);
        }
        if let Some(user) = &self.user {
            // etcd's tokens do not outlive an etcd restart (simple tokens) or their TTL: log in again when refused.
            options = options.with_user(user.name.clone(), user.password.clone()).with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

impl EtcdLock {
    /// Connects to etcd at `endpoints` (e.g. `http://10.0.0.5:2379`), keeping locks under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdLock, LockError> {
        EtcdLock::connect_with(endpoints, prefix, &EtcdAuth::default()).await
    }

    /// `connect`, over TLS and/or as an etcd user (`https://` endpoints with TLS).
    pub async fn connect_with(endpoints: &[String], prefix: &str, auth: &EtcdAuth) -> Result<EtcdLock, LockError> {
        let client = Client::connect(endpoints, Some(auth.options()?)).await.map_err(service)?;
        // One read under the prefix now: a wrong CA, a missing client certificate, a bad password or a user without
        // access to the prefix stops the start with etcd's reason, not the first rollout.
        let probe = etcd_client::GetOptions::new().with_prefix().with_count_only();
        client.kv_client().get(prefix, Some(probe)).await.map_err(|e| {
            LockError::Service(format!("etcd at {} refused to read {prefix}: {e}", endpoints.join(", ")))
        })?;
        Ok(EtcdLock { client, prefix: prefix.to_string(), shared: Mutex::default() })
    }

    fn key(&self, target: &str) -> String {
        format!("{}{target}", self.prefix)
    }

    /// One keep-alive; whether etcd still knows the lease.
    async fn keep_alive(&self, id: i64) -> Result<bool, etcd_client::Error> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        Ok(stream.message().await?.is_some_and(|r| r.ttl() > 0))
    }

    /// The shared lease for `ttl` seconds. One not confirmed alive in the last third of its TTL is kept alive first,
    /// so a lock taken on it has at least two thirds of its TTL ahead, as on a new lease; an expired one is replaced.
    async fn lease(&self, ttl: i64) -> Result<i64, LockError> {
        let mut shared = self.shared.lock().await;
        if let Some(s) = shared.get_mut(&ttl) {
            if s.refreshed.elapsed() < Duration::from_secs(ttl.unsigned_abs()) / 3 {
                return Ok(s.id);
            }
            if self.keep_alive(s.id).await.unwrap_or(false) {
                s.refreshed = Instant::now();
                return Ok(s.id);
            }
        }
        let mut client = self.client.clone();
        let grant = client.lease_grant(ttl, None).await.map_err(service)?;
        shared.insert(ttl, Shared { id: grant.id(), refreshed: Instant::now() });
        Ok(grant.id())
    }

    /// Forgets a shared lease etcd no longer knows (if it is still the one for its TTL).
    async fn forget_lease(&self, id: i64) {
        self.shared.lock().await.retain(|_, s| s.id != id);
    }

    async fn refreshed(&self, id: i64) {
        if let Some(s) = self.shared.lock().await.values_mut().find(|s| s.id == id) {
            s.refreshed = Instant::now();
        }
    }

    /// Takes whichever of `targets`' locks are free in one transaction: one nested "create if absent" per key.
    async fn acquire_chunk(&self, targets: &[String], holder: &str, ttl: i64) -> Result<Vec<Option<Lease>>, LockError> {
        let mut client = self.client.clone();
        for attempt in 0..2 {
            let id = self.lease(ttl).await?;
            let ops = targets
                .iter()
                .map(|target| {
                    let key = self.key(target);
                    TxnOp::txn(
                        Txn::new()
                            .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then(vec![TxnOp::put(key, holder, Some(PutOptions::new().with_lease(id)))]),
                    )
                })
                .collect::<Vec<_>>();
            let response = match client.txn(Txn::new().and_then(ops)).await {
                Ok(response) => response,
                // The lease expired between its check and the put: take a new one, once.
                Err(e) if attempt == 0 && lease_not_found(&e) => {
                    self.forget_lease(id).await;
                    continue;
                }
                Err(e) => return Err(service(e)),
            };
            // Every key created here has this transaction's revision as its create revision.
            let token = token_of(response.header().map(|h| h.revision()).unwrap_or_default())?;
            let taken =
                response.op_responses().into_iter().map(|r| matches!(r, TxnOpResponse::Txn(t) if t.succeeded()));
            return Ok(targets
                .iter()
                .zip(taken)
                .map(|(target, taken)| {
                    taken.then(|| Lease { target: target.clone(), holder: holder.to_string(), token, id })
                })
                .collect());
        }
        Err(LockError::Service("etcd kept refusing the lease it had just granted".into()))
    }

    /// Whether each key still belongs to its lease: one transaction of reads per chunk.
    async fn still_ours(&self, leases: &[Lease]) -> Result<Vec<bool>, LockError> {
        let mut client = self.client.clone();
        let mut ours = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(TXN_KEYS) {
            let reads = chunk.iter().map(|l| TxnOp::get(self.key(&l.target), None)).collect::<Vec<_>>();
            let response = client.txn(Txn::new().and_then(reads)).await.map_err(service)?;
            for (lease, read) in chunk.iter().zip(response.op_responses()) {
                let TxnOpResponse::Get(got) = read else {
                    return Err(LockError::Service("etcd answered a read with something else".into()));
                };
                ours.push(
                    got.kvs()
                        .first()
                        .is_some_and(|kv| kv.lease() == lease.id && kv.create_revision() as u64 == lease.token),
                );
            }
        }
        Ok(ours)
    }
}

#[async_trait]
impl Lock for EtcdLock {
    async fn acquire(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        Ok(self.acquire_many(&[target.to_string()], holder, ttl).await?.pop().flatten())
    }

    async fn acquire_many(
        &self,
        targets: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<Option<Lease>>, LockError> {
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut leases = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(TXN_KEYS) {
            leases.extend(self.acquire_chunk(chunk, holder, ttl).await?);
        }
        Ok(leases)
    }

    async fn renew(&self, lease: &Lease) -> Result<(), LockError> {
        self.renew_many(std::slice::from_ref(lease)).await.pop().unwrap_or(Ok(()))
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<(), LockError>> {
        // Each shared lease once; then whether each key is still ours (a lease etcd no longer knows fails the
        // keep-alive; what matters is whether the key is still ours).
        let mut alive: HashMap<i64, Result<bool, String>> = HashMap::new();
        for lease in leases {
            if alive.contains_key(&lease.id) {
                continue;
            }
            let kept = self.keep_alive(lease.id).await.map_err(|e| e.to_string());
            match kept {
                Ok(true) => self.refreshed(lease.id).await,
                Ok(false) => self.forget_lease(lease.id).await,
                Err(_) => {}
            }
            alive.insert(lease.id, kept);
        }
        let ours = match self.still_ours(leases).await {
            Ok(ours) => ours,
            Err(e) => return leases.iter().map(|_| Err(e.clone())).collect(),
        };
        leases
            .iter()
            .zip(ours)
            .map(|(lease, ours)| match (&alive[&lease.id], ours) {
                (Ok(true), true) => Ok(()),
                (_, false) | (Ok(false), _) => Err(LockError::Lost { target: lease.target.clone() }),
                (Err(e), true) => Err(LockError::Service(e.clone())),
            })
            .collect()
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        // The key only: the lease is shared with this process's other locks.
        let mut client = self.client.clone();
        let key = self.key(&lease.target);
        let token = i64::try_from(lease.token).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, token)])
            .and_then(vec![TxnOp::delete(key, None)]);
        client.txn(txn).await.map_err(service)?;
        Ok(())
    }

    async fn holder(&self, target: &str) -> Result<Option<Holder>, LockError> {
        let mut client = self.client.clone();
        let got = client.get(self.key(target), None).await.map_err(service)?;
        Ok(got.kvs().first().map(|kv| Holder {
            holder: kv.value_str().unwrap_or("").to_string(),
            token: u64::try_from(kv.create_revision()).unwrap_or(0),
        }))
    }
}
