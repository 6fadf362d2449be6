//! `flotilla`: parse the command line, then hand over to [`commands::run`].

mod args;
mod certs;
mod commands;
mod dev;
mod exit;
mod fleet;
mod import;
mod lint;
mod output;
mod schema;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    output::init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::Code::Failed.into();
        }
    };
    runtime.block_on(commands::run(cli)).into()
}
