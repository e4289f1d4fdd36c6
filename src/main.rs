//! The `wshub` binary: load the configuration, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wshub::config::{Cli, Command, LogFormat, ServeArgs};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
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
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let hub = wshub::Hub::new(args.hub_config());
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
