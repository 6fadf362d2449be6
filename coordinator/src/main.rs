//! `flotilla-coordinator`: the fleet coordinator. Until the fleet control plane lands it only says so.

fn main() -> std::process::ExitCode {
    eprintln!(
        "flotilla-coordinator {}: the fleet coordinator is not built yet.\n\
         To migrate one database now, use `flotilla up --db URL --dir DIR`.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
