//! Lint on a hostile script: squawk's parser and rules on PostgreSQL, the MySQL and SQLite rules.
#![no_main]
use std::collections::BTreeMap;

use flotilla_core::{Engine, Files, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut entries = BTreeMap::new();
    entries.insert("000001_fuzz.up.sql".to_string(), data.to_vec());
    entries.insert("000001_fuzz.down.sql".to_string(), data.iter().rev().copied().collect());
    let files = Files::new("fuzz", entries);
    let Ok(set) = flotilla_core::read_files(&files, &ReadOptions::default()) else { return };
    for engine in [Engine::Postgres, Engine::Mysql, Engine::Sqlite] {
        let _ = flotilla_core::lint::lint(&set.migrations, engine, &Default::default());
    }
});
