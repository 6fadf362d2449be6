//! A migration bundle: the files of a migrations directory, as the coordinator stores them (content-addressed,
//! immutable) and sends them to agents. Agents read a bundle with the same readers the CLI uses, so a migration's
//! checksum is the same wherever it runs.
//!
//! A directory whose subdirectories are named after engines (`postgres/`, `mysql/`, `sqlite/`, `mongodb/`) holds one
//! set per engine, so one plan can roll a change across a mixed fleet; any other directory is one set for every engine.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reader::{read_files, Files, MigrationSet, ReadError, ReadOptions};
use crate::Engine;

/// The key of the set that serves every engine without a set of its own.
pub const ANY_ENGINE: &str = "*";
/// Bundles are for migrations, not data: refuse anything larger. An assignment carries one whole, so gRPC's message
/// limit (`flotilla_proto::MAX_MESSAGE_BYTES`) is this plus room for the rest of the message.
pub const MAX_BUNDLE_BYTES: usize = 63 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Engine name (or `*`) → relative file path (with `/`) → content.
    pub sets: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("the bundle is not valid: {0}")]
    Invalid(String),
    #[error("the bundle has no migrations for {0}")]
    NoSetFor(Engine),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn io(path: &Path, e: impl std::fmt::Display) -> BundleError {
    BundleError::Io { path: path.display().to_string(), message: e.to_string() }
}

impl Bundle {
    /// Reads `dir` (see the module docs). Nothing is parsed here; [`Bundle::check`] does that.
    pub fn from_dir(dir: &Path) -> Result<Bundle, BundleError> {
        let mut sets = BTreeMap::new();
        for engine in Engine::ALL {
            let sub = dir.join(engine.as_str());
            if sub.is_dir() {
                sets.insert(engine.as_str().to_string(), files_under(&sub)?);
            }
        }
        if sets.is_empty() {
            sets.insert(ANY_ENGINE.to_string(), files_under(dir)?);
        }
        let bundle = Bundle { sets };
        if bundle.to_json().len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Invalid(format!("{} holds more than {MAX_BUNDLE_BYTES} bytes", dir.display())));
        }
        Ok(bundle)
    }

    /// Parses a bundle received over the network, refusing unknown engines and unsafe paths.
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Invalid(format!(
                "the bundle is {} bytes, over the limit of {MAX_BUNDLE_BYTES} bytes (63 MiB): bundles are for \
                 migrations, not data",
                bytes.len()
            )));
        }
        let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| BundleError::Invalid(e.to_string()))?;
        for (key, files) in &bundle.sets {
            if key != ANY_ENGINE && key.parse::<Engine>().is_err() {
                return Err(BundleError::Invalid(format!("unknown engine `{key}`")));
            }
            for path in files.keys() {
                let safe = !path.is_empty()
                    && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
                    && !path.contains('\\');
                if !safe {
                    return Err(BundleError::Invalid(format!("file path `{path}` is not a plain relative path")));
                }
            }
        }
        Ok(bundle)
    }

    /// Canonical JSON: the same files always give the same bytes (and so the same id).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The content address: SHA-256 of the canonical JSON, in hex.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_json().as_bytes()))
    }

    /// The files for `engine`: its own set, or the set for every engine.
    pub fn files_for(&self, engine: Engine) -> Option<&BTreeMap<String, String>> {
        self.sets.get(engine.as_str()).or_else(|| self.sets.get(ANY_ENGINE))
    }

    /// The migration set for `engine`, read from the bundle's own files (nothing is written anywhere).
    pub fn read(&self, engine: Engine, options: &ReadOptions) -> Result<MigrationSet, BundleError> {
        let key = if self.sets.contains_key(engine.as_str()) { engine.as_str() } else { ANY_ENGINE };
        let files = self.sets.get(key).ok_or(BundleError::NoSetFor(engine))?;
        let options = ReadOptions { engine: Some(engine), ..options.clone() };
        Ok(read_files(&Files::from_texts(set_root(key), files), &options)?)
    }

    /// Reads every set of the bundle, by its key (an engine's name, or `*`).
    pub fn check(&self, options: &ReadOptions) -> Result<BTreeMap<String, MigrationSet>, BundleError> {
        let mut out = BTreeMap::new();
        for (key, files) in &self.sets {
            let options = ReadOptions { engine: key.parse().ok(), ..options.clone() };
            out.insert(key.clone(), read_files(&Files::from_texts(set_root(key), files), &options)?);
        }
        Ok(out)
    }
}

/// How messages name a set's files: under the engine's name, or bare for the set every engine shares.
fn set_root(key: &str) -> &str {
    if key == ANY_ENGINE {
        ""
    } else {
        key
    }
}

/// Every file under `dir` as text.
fn files_under(dir: &Path) -> Result<BTreeMap<String, String>, BundleError> {
    let files = Files::load(dir)?;
    if files.is_empty() {
        return Err(io(dir, "no migration files"));
    }
    files.iter().map(|(rel, _)| Ok((rel.to_string(), files.text(rel)?.to_string()))).collect()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn per_engine_sets_and_content_address() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, file) in [("postgres", "1_a.up.sql"), ("mongodb", "1_a.up.json")] {
            fs::create_dir_all(dir.path().join(engine)).unwrap();
            fs::write(dir.path().join(engine).join(file), "x").unwrap();
        }
        let bundle = Bundle::from_dir(dir.path()).unwrap();
        assert!(bundle.files_for(Engine::Postgres).unwrap().contains_key("1_a.up.sql"));
        assert!(bundle.files_for(Engine::Mysql).is_none());
        let again = Bundle::from_json(bundle.to_json().as_bytes()).unwrap();
        assert_eq!(again.id(), bundle.id());
    }

    #[test]
    fn unsafe_paths_and_unknown_engines_are_refused() {
        for bad in [
            r#"{"sets":{"*":{"../x.sql":""}}}"#,
            r#"{"sets":{"*":{"/etc/x.sql":""}}}"#,
            r#"{"sets":{"oracle":{"1_a.up.sql":""}}}"#,
            r#"{"sets":3}"#,
        ] {
            assert!(Bundle::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
