//! The agent's and the coordinator's TOML configs, through every check made before anything connects. The first
//! byte picks which.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if which % 2 == 0 {
        if let Ok(config) = toml::from_str::<flotilla_agent::daemon::config::AgentConfig>(text) {
            let _ = config.check();
        }
    } else if let Ok(file) = toml::from_str::<flotilla_coordinator::config::File>(text) {
        if file.etcd_password_file.is_none() {
            let _ = file.access();
            let _ = file.into_config();
        }
    }
});
