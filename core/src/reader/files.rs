//! A migrations directory in memory: relative path → bytes. Readers work on this alone, so a bundle (which
//! carries its files) and a directory on disk are read by the same code; [`Files::load`] is the one place that
//! touches the file system.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ReadError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// Where the files came from, for messages: a directory, or a bundle's set name.
    root: PathBuf,
    /// `/`-separated relative paths; names starting with `.` are left out.
    entries: BTreeMap<String, Vec<u8>>,
}

impl Files {
    pub fn new(root: impl Into<PathBuf>, entries: BTreeMap<String, Vec<u8>>) -> Files {
        let entries =
            entries.into_iter().filter(|(rel, _)| !rel.split('/').any(|part| part.starts_with('.'))).collect();
        Files { root: root.into(), entries }
    }

    pub fn from_texts(root: impl Into<PathBuf>, texts: &BTreeMap<String, String>) -> Files {
        Files::new(root, texts.iter().map(|(rel, text)| (rel.clone(), text.clone().into_bytes())).collect())
    }

    /// Every file under `dir`, recursively, skipping names that start with `.`.
    pub fn load(dir: &Path) -> Result<Files, ReadError> {
        let mut entries = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let listing =
                fs::read_dir(&d).map_err(|e| ReadError::new(&d, format!("cannot read migrations directory: {e}")))?;
            for entry in listing {
                let entry = entry.map_err(|e| ReadError::new(&d, format!("cannot list migrations directory: {e}")))?;
                let path = entry.path();
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    return Err(ReadError::new(&path, "file name is not valid UTF-8"));
                };
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                let bytes = fs::read(&path).map_err(|e| ReadError::new(&path, format!("cannot read: {e}")))?;
                entries.insert(rel, bytes);
            }
        }
        Ok(Files { root: dir.to_path_buf(), entries })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `rel` as messages name it.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.entries.contains_key(rel)
    }

    /// Every file, by relative path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(rel, bytes)| (rel.as_str(), bytes.as_slice()))
    }

    /// The names directly at the top, sorted: files, and folders (with `true`) that hold files.
    pub fn top_level(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = Vec::new();
        for rel in self.entries.keys() {
            let entry = match rel.split_once('/') {
                Some((folder, _)) => (folder.to_string(), true),
                None => (rel.clone(), false),
            };
            if out.last() != Some(&entry) {
                out.push(entry);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A file's text; not UTF-8 is an error naming the byte.
    pub fn text(&self, rel: &str) -> Result<&str, ReadError> {
        let bytes = self.entries.get(rel).ok_or_else(|| ReadError::new(&self.path(rel), "no such file"))?;
        std::str::from_utf8(bytes)
            .map_err(|e| ReadError::new(&self.path(rel), format!("not valid UTF-8 (at byte {})", e.valid_up_to())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_lists_files_and_folders_once_and_hides_dotfiles() {
        let files = Files::from_texts(
            "m",
            &[("2_b/up.sql", ""), ("2_b/down.sql", ""), ("1_a.up.sql", ""), (".git/HEAD", ""), ("x/.keep", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert_eq!(files.top_level(), [("1_a.up.sql".to_string(), false), ("2_b".to_string(), true)]);
        assert!(files.exists("2_b/up.sql") && !files.exists(".git/HEAD"));
        assert_eq!(files.path("1_a.up.sql"), Path::new("m/1_a.up.sql"));
    }
}
