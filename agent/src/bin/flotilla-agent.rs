//! `flotilla-agent`: the fleet agent. Until the fleet control plane lands it only says so; the engine it will run
//! (drivers and executor) is this crate's library, used today by the `flotilla` CLI.

fn main() -> std::process::ExitCode {
    eprintln!(
        "flotilla-agent {}: the fleet agent (pulling assignments from a coordinator) is not built yet.\n\
         To migrate one database now, use `flotilla up --db URL --dir DIR`.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
