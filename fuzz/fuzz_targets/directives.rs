//! One migration's UP script with its `-- flotilla:…` directives (lock and statement timeouts, retries,
//! no-transaction, backfill, lint allow/deny), as golang-migrate files.
#![no_main]
use std::collections::BTreeMap;

use flotilla_core::{Files, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut entries = BTreeMap::new();
    entries.insert("000001_fuzz.up.sql".to_string(), data.to_vec());
    entries.insert("000001_fuzz.down.sql".to_string(), b"SELECT 1;".to_vec());
    let files = Files::new("fuzz", entries);
    if let Ok(set) = flotilla_core::read_files(&files, &ReadOptions::default()) {
        let _ = flotilla_core::lint::check_directives(&set.migrations);
    }
});
