//! The `wshub` binary: `wshub serve` loads the configuration, binds and serves until
//! SIGINT/SIGTERM; `wshub bench` is the load generator.

mod bench;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wshub::config::{LogFormat, ServeArgs};

/// wshub: a real-time WebSocket hub.
#[derive(Debug, Parser)]
#[command(name = "wshub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub server.
    Serve(ServeArgs),
    /// Load generator: connect, fanout and echo benchmarks against a running server (loopback only).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Bench(cmd) => {
            return match bench::run(cmd) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wshub bench: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wshub: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wshub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let listener = wshub::server::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let auth = wshub::auth::Auth::new(&args.auth_settings()?)?;
    if !auth.requires_token() {
        tracing::warn!("connection authentication is OFF: anyone who reaches /ws connects anonymously (set --jwt-secret or --jwt-public-key)");
    }
    if !auth.requires_api_key() {
        tracing::warn!("the REST API is open: anyone who reaches /api can push to every client (set --api-key)");
    }
    let hub = wshub::Hub::with_auth(args.hub_config(), auth);
    let app = wshub::router(hub.clone());
    let options = wshub::server::ServerOptions {
        handshake_timeout: args.handshake_timeout,
    };
    wshub::server::run(
        listener,
        hub,
        app,
        options,
        wshub::server::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
