//! MongoDB migration scripts: a JSON array of commands in Extended JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(commands) = flotilla_core::mongo::parse_commands(text) {
        let _ = flotilla_core::mongo::fits_one_transaction(commands.iter().map(|c| (c.name.as_str(), &c.body)));
    }
});
