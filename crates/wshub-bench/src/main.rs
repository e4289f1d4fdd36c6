//! `wshub-bench`: the load generator, its own binary so the server carries none of it.
//! Loopback targets only; every run is bounded in count and time.

mod bench;

use clap::Parser;

/// wshub-bench: connect, fan-out, echo and soak runs against a server on this machine.
#[derive(Debug, Parser)]
#[command(name = "wshub-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: bench::BenchCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match bench::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wshub-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
