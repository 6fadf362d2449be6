//! The production [`Lock`]: an etcd lease per holding, the key `<prefix><target>` (by default
//! `/flotilla/locks/<target>`) attached to it, created only if absent (one transaction). Fleets that share one etcd
//! keep apart by their prefixes. The fencing token is the key's create revision: etcd revisions only grow.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::lock::{Holder, Lease, Lock, LockError};

pub struct EtcdLock {
    client: Client,
    prefix: String,
}

fn service(e: etcd_client::Error) -> LockError {
    LockError::Service(e.to_string())
}

impl EtcdLock {
    /// Connects to etcd at `endpoints` (e.g. `http://10.0.0.5:2379`), keeping locks under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdLock, LockError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options)).await.map_err(service)?;
        Ok(EtcdLock { client, prefix: prefix.to_string() })
    }

    fn key(&self, target: &str) -> String {
        format!("{}{target}", self.prefix)
    }

    /// Whether the key still belongs to this lease.
    async fn still_ours(&self, lease: &Lease) -> Result<bool, LockError> {
        let mut client = self.client.clone();
        let got = client.get(self.key(&lease.target), None).await.map_err(service)?;
        Ok(got.kvs().first().is_some_and(|kv| kv.lease() == lease.id && kv.create_revision() as u64 == lease.token))
    }
}

#[async_trait]
impl Lock for EtcdLock {
    async fn acquire(&self, target: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let mut client = self.client.clone();
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let grant = client.lease_grant(ttl_secs, None).await.map_err(service)?;
        let key = self.key(target);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key.clone(), holder, Some(PutOptions::new().with_lease(grant.id())))]);
        let response = client.txn(txn).await.map_err(service)?;
        if !response.succeeded() {
            // Someone holds it: give our unused lease back.
            let _ = client.lease_revoke(grant.id()).await;
            return Ok(None);
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        let token =
            u64::try_from(revision).map_err(|_| LockError::Service(format!("etcd returned revision {revision}")))?;
        Ok(Some(Lease { target: target.to_string(), holder: holder.to_string(), token, id: grant.id() }))
    }

    async fn renew(&self, lease: &Lease) -> Result<(), LockError> {
        let mut client = self.client.clone();
        let kept = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease.id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
        }
        .await;
        // A lease etcd no longer knows fails the keep-alive; what matters is whether the key is still ours.
        match (kept, self.still_ours(lease).await?) {
            (Ok(true), true) => Ok(()),
            (_, false) | (Ok(false), _) => Err(LockError::Lost { target: lease.target.clone() }),
            (Err(e), true) => Err(service(e)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let mut client = self.client.clone();
        let key = self.key(&lease.target);
        let token = i64::try_from(lease.token).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, token)])
            .and_then(vec![TxnOp::delete(key, None)]);
        client.txn(txn).await.map_err(service)?;
        // The lease may have expired already; that is fine.
        let _ = client.lease_revoke(lease.id).await;
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
