//! The fuzz input for a file tree: files one after another, each after a line `=== NAME` (the seed corpora are
//! made so from the fixtures by fuzz/seed). Bytes before the first header are ignored.

use std::collections::BTreeMap;

pub fn files(data: &[u8]) -> flotilla_core::Files {
    let text = String::from_utf8_lossy(data);
    let mut entries = BTreeMap::new();
    for part in text.split("\n=== ").skip(1) {
        let (name, body) = part.split_once('\n').unwrap_or((part, ""));
        entries.insert(name.trim().to_string(), body.as_bytes().to_vec());
    }
    flotilla_core::Files::new("fuzz", entries)
}
