//! The bundles this agent keeps from its assignment stream. A message carries a bundle's bytes only when the agent
//! does not keep it already ([`KeptBundles`], run by the coordinator over the same messages): a bundle crosses
//! once per session, is checked against its id and parsed once, and only the last few are held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_core::bundle::Bundle;
use flotilla_core::{Engine, MigrationSet, ReadOptions};
use flotilla_proto::KeptBundles;
use sha2::{Digest, Sha256};

/// How many bundles the agent keeps from a stream: a plan and its rollback, and a few more.
pub(super) const BUNDLES_KEPT: u32 = 4;

/// The migration set per engine the agent serves, or why there is none.
type Sets = HashMap<Engine, Result<Arc<MigrationSet>, String>>;

/// A bundle that arrived on the stream, read on first use.
pub(super) struct StreamBundle {
    id: String,
    /// Until first use.
    bytes: Mutex<Vec<u8>>,
    engines: Arc<[Engine]>,
    sets: tokio::sync::OnceCell<Sets>,
}

impl StreamBundle {
    /// The bundle's migration set for `engine`: on first use the bundle is checked against its content address and
    /// parsed, and a set read for every engine the agent serves.
    pub async fn set(&self, engine: Engine) -> Result<Arc<MigrationSet>, String> {
        let sets = self.sets.get_or_init(|| async { self.read() }).await;
        sets.get(&engine).cloned().unwrap_or_else(|| Err(format!("this agent serves no {engine} target")))
    }

    fn read(&self) -> Sets {
        let bytes = std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|e| e.into_inner()));
        let every = |error: String| self.engines.iter().map(|e| (*e, Err(error.clone()))).collect();
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != self.id {
            return every(format!("the bundle's content does not match its id {} (got {digest})", self.id));
        }
        let bundle = match Bundle::from_json(&bytes) {
            Ok(bundle) => bundle,
            Err(e) => return every(e.to_string()),
        };
        let options = ReadOptions { allow_missing_down: true, ..ReadOptions::default() };
        let read = |engine| bundle.read(engine, &options).map(Arc::new).map_err(|e| e.to_string());
        self.engines.iter().map(|engine| (*engine, read(*engine))).collect()
    }
}

/// A session's side of [`KeptBundles`].
pub(super) struct SessionBundles {
    kept: KeptBundles<Arc<StreamBundle>>,
    engines: Arc<[Engine]>,
}

impl SessionBundles {
    /// For a new stream (which the agent opens asking for [`BUNDLES_KEPT`]), serving targets of `engines`.
    pub fn new(engines: impl IntoIterator<Item = Engine>) -> Self {
        let mut engines: Vec<Engine> = engines.into_iter().collect();
        engines.sort_by_key(|e| e.as_str());
        engines.dedup();
        SessionBundles { kept: KeptBundles::new(BUNDLES_KEPT as usize), engines: engines.into() }
    }

    /// The bundle the stream's next message names: its bytes when it carries them (kept from now on), else the one
    /// kept. Called for every message, in the stream's order, or the two sides' [`KeptBundles`] disagree.
    pub fn resolve(&mut self, id: &str, bytes: Vec<u8>) -> Result<Arc<StreamBundle>, String> {
        if bytes.is_empty() {
            return self.kept.touch(id).cloned().ok_or_else(|| {
                format!("the coordinator sent bundle {id} without its content, and this agent does not keep it")
            });
        }
        let bundle = Arc::new(StreamBundle {
            id: id.to_string(),
            bytes: Mutex::new(bytes),
            engines: self.engines.clone(),
            sets: tokio::sync::OnceCell::new(),
        });
        self.kept.keep(id, bundle.clone());
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_json() -> Vec<u8> {
        let files = [("1_a.up.sql".to_string(), "CREATE TABLE a (id INT);".to_string())].into();
        Bundle { sets: [("postgres".to_string(), files)].into() }.to_json().into_bytes()
    }

    #[tokio::test]
    async fn a_bundle_is_read_once_and_named_without_its_bytes_after() {
        let bytes = bundle_json();
        let id = hex::encode(Sha256::digest(&bytes));
        let mut session = SessionBundles::new([Engine::Postgres]);
        let first = session.resolve(&id, bytes).expect("carried");
        let again = session.resolve(&id, Vec::new()).expect("kept");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.set(Engine::Postgres).await.expect("set").migrations.len(), 1);
        let unknown = session.resolve("0f", Vec::new()).err().expect("not kept");
        assert!(unknown.contains("does not keep it"), "{unknown}");
        assert!(first.set(Engine::Mysql).await.is_err(), "no MySQL target here");
    }

    #[tokio::test]
    async fn a_bundle_that_does_not_match_its_id_is_refused() {
        let mut session = SessionBundles::new([Engine::Postgres]);
        let bundle = session.resolve(&"ab".repeat(32), bundle_json()).expect("carried");
        let refused = bundle.set(Engine::Postgres).await.expect_err("refused");
        assert!(refused.contains("does not match its id"), "{refused}");
    }
}
