//! The bundle decoder (what `plan create` sends and agents receive), then every migration set in it read.
#![no_main]
use flotilla_core::bundle::Bundle;
use flotilla_core::ReadOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::from_json(data) {
        let _ = bundle.id();
        let _ = bundle.check(&ReadOptions { allow_missing_down: true, engine: None });
    }
});
