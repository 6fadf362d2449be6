//! The SQL statement splitter, in each dialect (quotes, dollar quotes, comments, DELIMITER, BEGIN…END bodies).
#![no_main]
use flotilla_core::split::{is_transaction_control, split, Dialect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    for dialect in [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite] {
        if let Ok(statements) = split(sql, dialect) {
            for s in &statements {
                let _ = is_transaction_control(&s.text);
            }
        }
    }
});
