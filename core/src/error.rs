//! Bad input in a set of migrations: names the file and, where it applies, the line.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ReadError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ReadError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        ReadError { path: path.to_path_buf(), line: None, message: message.into() }
    }

    pub fn at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        ReadError { path: path.to_path_buf(), line: Some(line), message: message.into() }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}
